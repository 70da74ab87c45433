"""The failures a user can fix. Each message names the value, file or address and what to do; the
command line prints it as one line (`error: ...`) and exits with status 2. No torch here."""


class GptvaeError(Exception):
    """Base of every error the command line reports as one line."""


class ConfigError(GptvaeError, ValueError):
    """A bad preset, override, spec or config value."""


class DataError(GptvaeError, ValueError):
    """A dataset problem: bad name, missing or corrupt file, bad argument."""


class CheckpointError(GptvaeError, RuntimeError):
    """A checkpoint is missing, corrupt or of another config. It is never deleted for you."""


class NonFiniteLossError(GptvaeError, RuntimeError):
    """The loss became NaN or inf. The last good checkpoint is kept."""


class TrackingError(GptvaeError, RuntimeError):
    """The tracking store cannot be used, or a run is not in it."""


class ResultsMissingError(GptvaeError, FileNotFoundError):
    """Exported results are absent; the message names the make target that produces them."""


class FileWriteError(GptvaeError, OSError):
    """A file could not be written: full disk, read-only folder, no permission."""


class ClaimLostError(GptvaeError, RuntimeError):
    """Another process took over a setting this process was training (its claim went stale)."""


class ClusterError(GptvaeError, RuntimeError):
    """The Ray executor cannot run: Ray is not installed, or the cluster cannot be reached."""
