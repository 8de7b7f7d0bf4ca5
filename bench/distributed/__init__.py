"""Multi-process jobs (dist.nproc > 1): the job starts N workers through torchrun, each measures
its rank with the usual protocol on a DDP- or FSDP-wrapped model, and the job merges their
records into one (bench/distributed/launch.py, worker.py, wrap.py, comm.py)."""
