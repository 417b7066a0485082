"""Training one model for one stage: the engine, the learning rate per step, bf16 on CPUs, the process runtime (ranks,
random streams, memory), preemption."""
