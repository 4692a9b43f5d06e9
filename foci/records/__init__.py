"""What a generation leaves behind: image files and their metadata in both schemes."""
