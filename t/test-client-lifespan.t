use strict;
use warnings;
use Test::More;
use Future::AsyncAwait;
use PAGI::Test::Client;

alarm 60;

# A lifespan-aware app: fills state at startup, reports its events in @log.
my @log;
sub lifespan_app {
    my (%o) = @_;
    return async sub {
        my ($scope, $receive, $send) = @_;
        if ($scope->{type} eq 'lifespan') {
            while (1) {
                my $ev = await $receive->();
                push @log, $ev->{type};
                if ($ev->{type} eq 'lifespan.startup') {
                    if ($o{fail_startup}) {
                        await $send->({ type => 'lifespan.startup.failed', message => 'database unreachable' });
                        return;
                    }
                    $scope->{state}{db} = { connected => 1 };
                    await $send->({ type => 'lifespan.startup.complete' });
                }
                elsif ($ev->{type} eq 'lifespan.shutdown') {
                    await $send->($o{fail_shutdown} ? { type => 'lifespan.shutdown.failed', message => 'flush failed' }
                                                    : { type => 'lifespan.shutdown.complete' });
                    return;
                }
            }
        }
        die "unsupported scope type '$scope->{type}'\n" unless $scope->{type} eq 'http';
        await $receive->();
        my $body = $scope->{state}{db} && $scope->{state}{db}{connected} ? 'db ok' : 'no db';
        $scope->{state}{db}{requests}++ if $scope->{state}{db};
        await $send->({ type => 'http.response.start', status => 200, headers => [] });
        await $send->({ type => 'http.response.body', body => $body });
    };
}

subtest 'startup on the first request, state shared, shutdown at stop' => sub {
    @log = ();
    my $client = PAGI::Test::Client->new(app => lifespan_app());
    is_deeply \@log, [], 'nothing runs before the first request';
    is $client->get('/')->content, 'db ok', 'the request scope sees the state set at startup';
    is_deeply \@log, ['lifespan.startup'], 'lifespan.startup ran once';
    $client->get('/');
    is $client->state->{db}{requests}, 2, 'state values are shared with the lifespan scope';
    $client->stop;
    is_deeply \@log, [ 'lifespan.startup', 'lifespan.shutdown' ], 'lifespan.shutdown at stop';
};

subtest 'explicit start, shutdown when the client goes away' => sub {
    @log = ();
    {
        my $client = PAGI::Test::Client->new(app => lifespan_app());
        $client->start;
        is_deeply \@log, ['lifespan.startup'], 'start runs the startup';
    }
    is_deeply \@log, [ 'lifespan.startup', 'lifespan.shutdown' ], 'DESTROY runs the shutdown';
};

subtest 'startup.failed and shutdown.failed croak with the message' => sub {
    my $client = PAGI::Test::Client->new(app => lifespan_app(fail_startup => 1));
    eval { $client->get('/') };
    like $@, qr/\APAGI::Test::Client: Lifespan startup failed: database unreachable at \S*test-client-lifespan\.t line/,
        'startup.failed croaks, naming the message, at the caller';
    eval { $client->get('/') };
    like $@, qr/lifespan startup failed earlier: Lifespan startup failed: database unreachable/, 'later requests croak too';

    my $bad_shutdown = PAGI::Test::Client->new(app => lifespan_app(fail_shutdown => 1));
    $bad_shutdown->start;
    eval { $bad_shutdown->stop };
    like $@, qr/Lifespan shutdown failed: flush failed/, 'shutdown.failed croaks at stop';
};

subtest 'apps without lifespan and lifespan => 0' => sub {
    my $http_only = async sub {
        my ($scope, $receive, $send) = @_;
        die "unsupported scope type '$scope->{type}'\n" unless $scope->{type} eq 'http';
        await $receive->();
        await $send->({ type => 'http.response.start', status => 204 });
        await $send->({ type => 'http.response.body' });
    };
    my $client = PAGI::Test::Client->new(app => $http_only);
    my @warnings;
    local $SIG{__WARN__} = sub { push @warnings, @_ };
    is $client->get('/')->status, 204, 'an app that dies on lifespan still serves requests';
    $client->stop;
    is_deeply \@warnings, [], 'quietly';

    @log = ();
    my $off = PAGI::Test::Client->new(app => lifespan_app(), lifespan => 0);
    is $off->get('/')->content, 'no db', 'lifespan => 0: no startup';
    $off->stop;
    is_deeply \@log, [], 'and no lifespan events at all';
};

done_testing;
