"""The operator pages the API serves: the dashboard and its sessions, the demo page, the static
files (browser client, pages), and the process stats the dashboard shows."""
