"""Front ends on top of the core: the CLI, the REST API, the web UI and the server that wires them."""
