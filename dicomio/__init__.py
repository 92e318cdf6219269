"""Reading DICOM series into volumes and writing SEG, SR and CSV results."""
