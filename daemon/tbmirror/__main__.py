from tbmirror.cli import main

raise SystemExit(main())
