"""What happens to a task after it is submitted, told to whoever waits for it: change
notices between processes, the API's watch over them, and the events of a task."""
