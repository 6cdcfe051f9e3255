"""Pieces of `benchmarks/vs_flower.py` (and `rls_cost.py`): flpg, Flower 1.42 and the
raw PostgreSQL floor run the same federated rounds on this machine, measured the same way.

- `procs`: tagged worker processes, log files, and a cleanup that leaves nothing behind;
- `rss`: peak resident memory of process trees, sampled from /proc;
- `cluster`: the private PostgreSQL cluster and one scratch database per configuration;
- `flpg_side`, `flower_side`, `floor`: one configuration on each system;
- `security`: how flpg's workers connect (admin, enrolled roles, or row-level security off);
- `results`, `table`: what a configuration yields and the printed tables.
"""
