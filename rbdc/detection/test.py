"""``python -m rbdc.detection.test CONFIG CHECKPOINT [--work-dir DIR] [--out PKL] [--cfg-options K=V ...]
[--launcher none|pytorch|slurm|mpi]``: see :mod:`rbdc.detection.launch`."""

import sys

from rbdc.detection.launch import test_main

if __name__ == "__main__":
    sys.exit(test_main())
