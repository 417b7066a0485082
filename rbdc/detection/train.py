"""``python -m rbdc.detection.train CONFIG [--work-dir DIR] [--amp] [--resume [CKPT]] [--cfg-options K=V ...]
[--launcher none|pytorch|slurm|mpi] [--backbone PATH]``: see :mod:`rbdc.detection.launch`."""

import sys

from rbdc.detection.launch import train_main

if __name__ == "__main__":
    sys.exit(train_main())
