"""`python -m anomaly_ae.run [overrides]`: train one category and test it (the same as `anomaly-ae train`).

python -m anomaly_ae.run category=grid data.root=/data/mvtec_anomaly_detection
python -m anomaly_ae.run experiment=elpv_demo
python -m anomaly_ae.run -m category=carpet,grid,leather,tile,wood
"""

from anomaly_ae.cli.train import main

if __name__ == "__main__":
    main()
