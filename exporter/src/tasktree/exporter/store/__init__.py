"""The only code that talks to PostgreSQL: pool, migrations, landing, folding and queries."""
