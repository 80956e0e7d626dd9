"""Stage 6: the target tree, rewritten metadata, mailbox list dialects, verify."""
