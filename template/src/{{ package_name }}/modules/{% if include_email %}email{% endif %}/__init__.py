"""Email: SMTP delivery, message templates, and the tasks that send them."""
