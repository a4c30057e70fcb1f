"""``sqlbridge dashboard``: the queue, the failures, the schedules and the synced conversations
in a browser, with retry, cancel and schedule actions. See docs/dashboard.md.

Flask and waitress come with the ``dashboard`` extra (``pip install 'sqlbridge[dashboard]'``);
only ``command`` is imported by the CLI, and it imports them when the command runs."""
