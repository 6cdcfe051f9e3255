"""Each node adds step * (partition-id + 1); weights 10 * (partition-id + 1). Train
rounds from `gate-round` on wait until the file `gate` exists, so a test knows a run
is mid-round until it creates that file."""
