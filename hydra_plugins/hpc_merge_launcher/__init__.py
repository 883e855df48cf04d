"""hpc_merge's sweep launcher as a Hydra plugin (Hydra finds launchers under ``hydra_plugins``)."""
