"""Physical constants used across chimap.

The gyromagnetic ratio of the proton appears here and only here (design.md section 2).
"""

#: Proton gyromagnetic ratio over 2*pi, in Hz per tesla (CODATA 2018, 42.577 478 518 MHz/T).
GAMMA_BAR_HZ_PER_T: float = 42.577478e6

#: Susceptibility of air relative to water, in ppm, as used by the QSM challenge 2.0 head model
#: (Marques et al. MRM 2021;86:526). Used by the simulator for air outside the head and in sinuses.
CHI_AIR_REL_WATER_PPM: float = 9.2
