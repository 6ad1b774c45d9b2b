"""Hand-written reference models the generated code is checked against (never generated, never imported
by cartspec itself)."""
