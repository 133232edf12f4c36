from zuulpush.cli import main

raise SystemExit(main())
