"""`nndsl train`: the bundled data sets, the training driver, its MPI workers and pictures."""
