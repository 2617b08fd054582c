from bigrec_cli.cli import app

app(prog_name="bigrec")
