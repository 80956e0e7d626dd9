"""Stage 5: rules -> a pure list of actions; conflicts found before any write."""
