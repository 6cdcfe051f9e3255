"""The only code that executes SQL.

One function per named query of `sql/`, typed values in and out. Database errors
are translated here into `flpg.errors` by SQLSTATE and constraint name.
"""
