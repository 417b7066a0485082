"""What a plan costs in seconds: peak device throughput (MFU), the fitted cost model per machine kind, and the wall-
time estimates of a plan."""
