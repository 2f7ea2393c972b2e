"""What lands on disk: interval files published atomically, with a fixity manifest."""
