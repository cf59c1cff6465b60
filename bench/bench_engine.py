"""Engine speed beside transformers and the machine's limits: the same as `pixtral bench` (see its --help)."""

from pixtral.benchmark import main

if __name__ == "__main__":
    main()
