"""Errors a user can act on. The CLI prints them as one line, never as a traceback."""


class UserError(ValueError):
    """Base: the message names the file, key or value and what was expected."""


class ConfigError(UserError):
    pass


class DatasetError(UserError):
    pass


class WeightsError(UserError):
    pass


class CheckpointError(UserError):
    pass


class TrainingDiverged(RuntimeError):
    pass
