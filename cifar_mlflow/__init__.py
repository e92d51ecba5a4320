"""cifar-mlflow: train and compare CIFAR-10 models by study, tracked in MLflow."""

__version__ = "0.1.0"
