from dynamostore.cli import main

raise SystemExit(main())
