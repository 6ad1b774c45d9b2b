"""The transformers side of ``cartspec export --format hf``: these two files are copied into every
export beside the run's generated model, so the export loads with torch and transformers alone.
``configuration_cartspec`` is also imported here, to write ``config.json``; ``modeling_cartspec``
only runs inside an export (it imports the generated model next to it)."""
