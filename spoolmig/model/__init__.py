"""Stage 4: mailbox names, ACLs, layouts and the catalog of one server."""
