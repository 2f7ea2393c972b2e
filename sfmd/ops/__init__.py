"""The operating system's keepers: supervisord confs and systemd notifications."""
