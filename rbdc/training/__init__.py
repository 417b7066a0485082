"""Training one model for one stage: the engine (its stage loop; the parts it builds; one optimizer step), the learning
rate per step, bf16 on CPUs, the process runtime (ranks, random streams, memory), preemption."""
