"""The running gateway: listening, generations, reload, shutdown and supervised worker processes."""
