"""Echo apps for the transfer benchmark."""
