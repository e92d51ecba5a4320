from cifar_mlflow.console import fail
from cifar_mlflow.models.registry import ModelModuleError, load_extra_models

try:
    # The CLI's options are read from the registry as it is imported: a module named in
    # CIFAR_MLFLOW_MODELS that cannot be imported is reported first, in one line.
    load_extra_models()
except ModelModuleError as error:
    fail(str(error))

from cifar_mlflow.cli import main

main()
