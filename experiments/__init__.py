"""What sits above the paper's core: the DCGAN and DDLS (`gan`, `ddls`), controllable
generation's classifier and command line (`classifier`, `controllable`), sampler sweeps
(`sweep`, `sweep_grid`, `sweep_report`) and the offline feature extractor (`extractor`)."""
