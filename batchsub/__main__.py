from batchsub.cli import main

raise SystemExit(main())
