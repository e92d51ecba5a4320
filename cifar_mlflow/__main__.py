from cifar_mlflow.cli import main

main()
