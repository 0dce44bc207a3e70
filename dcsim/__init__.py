"""dcsim: fast simulation of spiking networks converted from LSQ-quantized CNNs, with Dynamic Confidence."""
