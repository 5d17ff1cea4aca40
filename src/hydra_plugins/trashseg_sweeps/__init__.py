"""trashseg's sweep plugins: `hydra/launcher=submitit_slurm` and `submitit_local` as
hydra-submitit-launcher's, with every setting of its configs, except that a job killed from
outside shows in the sweep's table as a failed job instead of ending the sweep in submitit's
UncompletedJobError (trashseg.training.launching.killed_jobs); `hydra/sweeper=optuna` as
hydra-optuna-sweeper's, except that a search its failed trials stop ends in the sweep's table
(trashseg.training.launching.sweeps.SearchEndsInTable).

Here because Hydra instantiates launchers and sweepers only from classes defined in its
hydra_plugins package; Hydra imports this module while it scans its plugins, before it composes a
config, so the configs stored here replace the plugins' of the same names (whichever it imports
first: the plugins' configs are imported below, before these are stored).
"""

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna_sweeper import optuna_sweeper
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from hydra_plugins.hydra_submitit_launcher import submitit_launcher

from trashseg.training.launching.killed_jobs import CollectingLauncher, queue_configs
from trashseg.training.launching.sweeps import SearchEndsInTable


class SlurmLauncher(CollectingLauncher, submitit_launcher.SlurmLauncher):
    pass


class LocalLauncher(CollectingLauncher, submitit_launcher.LocalLauncher):
    pass


class OptunaSweeper(SearchEndsInTable, optuna_sweeper.OptunaSweeper):
    pass


for name, node in queue_configs(__name__).items():
    ConfigStore.instance().store(group="hydra/launcher", name=name, node=node, provider="trashseg")
ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf(_target_=f"{__name__}.OptunaSweeper"),
                             provider="trashseg")
