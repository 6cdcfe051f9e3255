"""Pieces of `benchmarks/vs_flower.py` (and `rls_cost.py`): flpg, Flower 1.42 and the
raw PostgreSQL floor run the same federated rounds on this machine, measured the same way.

- `procs`: tagged worker processes, log files, and a cleanup that leaves nothing behind;
- `rss`: peak resident memory of process trees, sampled from /proc;
- `cluster`: the private PostgreSQL cluster and one scratch database per configuration;
- `flpg_side`, `flower_side`, `floor`: one configuration on each system (the floor through
  a logged and an UNLOGGED table); `flpg_federation`: flpg's workers for one configuration;
- `security`: how flpg's workers connect (admin, enrolled roles, or row-level security off);
- `plan`: the systems (flpg variants) and configurations (matrix, sweeps, cases) to run;
- `results`, `table`, `jsonlog`: what a configuration yields, the printed tables and the
  JSON results file (read back by `benchmarks/plot_curves.py`).
"""
