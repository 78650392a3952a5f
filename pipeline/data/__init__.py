"""Access to the preprocessed corpus (manifest, feature files, cropped clips) for training and evaluation."""
