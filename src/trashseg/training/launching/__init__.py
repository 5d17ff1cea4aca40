"""Where a run's processes come from and what a sweep shows: how Hydra's launchers and Lightning
make a job's processes (jobs), torch threads and loader workers per process (threads), a sweep's
W&B names and its closing table (sweeps), the record of a job refused before training
(job_failure), and the collection of each submitit job's result, a killed one as failed (killed_jobs)."""
