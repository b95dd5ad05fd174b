"""The broker seam: delivery of 'task N is due' messages. It holds no truth."""
