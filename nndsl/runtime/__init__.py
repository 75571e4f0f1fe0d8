"""The runtime side: `nndsl train`, bundled data sets, pictures."""
