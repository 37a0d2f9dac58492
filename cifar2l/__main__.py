from .cli import main

if __name__ == "__main__":  # not when a process imports this module again (multiprocessing)
    main()
