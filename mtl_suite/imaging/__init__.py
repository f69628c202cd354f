"""The paper's image pipeline: ROI preprocessing, U-Net WBC segmentation, single-cell crops, augmentation."""
