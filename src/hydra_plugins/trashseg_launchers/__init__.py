"""trashseg's submitit launchers: `hydra/launcher=submitit_slurm` and `submitit_local` as
hydra-submitit-launcher's, with every setting of its configs, except that a job killed from
outside shows in the sweep's table as a failed job instead of ending the sweep in submitit's
UncompletedJobError (trashseg.training.launching.killed_jobs).

Here because Hydra instantiates a launcher only from a class defined in its hydra_plugins package;
Hydra imports this module while it scans its plugins, before it composes a config, so the configs
stored here replace the plugin's of the same names (whichever of the two it imports first: the
plugin's configs are imported below, before these are stored).
"""

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher import submitit_launcher

from trashseg.training.launching.killed_jobs import CollectingLauncher, queue_configs


class SlurmLauncher(CollectingLauncher, submitit_launcher.SlurmLauncher):
    pass


class LocalLauncher(CollectingLauncher, submitit_launcher.LocalLauncher):
    pass


for name, node in queue_configs(__name__).items():
    ConfigStore.instance().store(group="hydra/launcher", name=name, node=node, provider="trashseg")
