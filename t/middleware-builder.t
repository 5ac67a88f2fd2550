# PAGI::Middleware (the base class) and PAGI::Middleware::Builder: order of
# composition, enable forms, enable_if, pass-through of other scope types,
# scope copying, error propagation; and a built stack on a real server.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use Future::AsyncAwait;
use PAGI::Test::Events qw(http_scope call_app response_of);
use PAGI::Test::Server qw(start_server stop_server http_get);
use PAGI::Middleware::Builder;

# A middleware that records its name on the way in and out.
{
    package Test::Tag;
    use parent 'PAGI::Middleware';
    use Future::AsyncAwait;
    sub init { $_[0]->option_error(name => 'is required') unless defined $_[0]{name} }
    async sub call {
        my ($self, $scope, $receive, $send, $app) = @_;
        my $copy = $self->scope_with($scope, 'test.trail' => [ @{ $scope->{'test.trail'} || [] }, $self->{name} ]);
        my $tag_send = async sub {
            my ($event) = @_;
            $event = { %$event, headers => [ @{ $event->{headers} || [] }, [ 'x-tag', $self->{name} ] ] }
                if $event->{type} eq 'http.response.start';
            await $send->($event);
        };
        await $app->($copy, $receive, $tag_send);
    }
}
$INC{'Test/Tag.pm'} = __FILE__;

my $inner = async sub {
    my ($scope, $receive, $send) = @_;
    die "only http\n" unless $scope->{type} eq 'http';
    die "boom\n" if $scope->{path} eq '/die';
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
    await $send->({ type => 'http.response.body', body => join(',', @{ $scope->{'test.trail'} || [] }) });
};

subtest 'order: the first enabled is the outermost' => sub {
    my $app = builder {
        enable '+Test::Tag', name => 'outer';
        enable(Test::Tag->new(name => 'middle'));
        enable sub { my ($next) = @_; return Test::Tag->new(name => 'inner')->wrap($next) };
        $inner;
    };
    my $scope = http_scope(path => '/');
    my $r = response_of(call_app($app, $scope));
    is($r->{body}, 'outer,middle,inner', 'requests pass outer first');
    is_deeply([ map { $_->[1] } grep { $_->[0] eq 'x-tag' } @{ $r->{headers} } ], [qw(inner middle outer)],
        'responses pass inner first');
    ok(!exists $scope->{'test.trail'}, "the caller's scope is not changed");
};

subtest 'enable_if' => sub {
    my $app = builder {
        enable_if { $_[0]{path} =~ m{^/api} } '+Test::Tag', name => 'api';
        enable '+Test::Tag', name => 'all';
        $inner;
    };
    is(response_of(call_app($app, http_scope(path => '/api/x')))->{body}, 'api,all', 'condition true: enabled');
    is(response_of(call_app($app, http_scope(path => '/web')))->{body}, 'all', 'condition false: skipped, the rest still runs');
};

subtest 'other scope types pass through untouched' => sub {
    my $seen;
    my $ws_app = async sub { my ($scope) = @_; $seen = $scope; };
    my $app = builder { enable '+Test::Tag', name => 'x'; $ws_app };
    my $scope = { type => 'websocket', path => '/ws', headers => [] };
    call_app($app, $scope);
    is($seen, $scope, 'a websocket scope reaches the app as the same hash');
    $scope = { type => 'lifespan' };
    call_app($app, $scope);
    is($seen, $scope, 'so does lifespan');
};

subtest 'errors' => sub {
    my $app = builder { enable '+Test::Tag', name => 'x'; $inner };
    my $r = call_app($app, http_scope(path => '/die'));
    like($r->{error}, qr/boom/, "the app's failure reaches the caller");
    eval { builder { enable 'NoSuchMiddlewareAnywhere'; $inner } };
    like($@, qr/cannot load PAGI::Middleware::NoSuchMiddlewareAnywhere/, 'an unknown name croaks, naming the class');
    eval { builder { enable '+Test::Tag'; $inner } };
    like($@, qr/option 'name' is required/, 'a bad option croaks when the builder runs, naming the option');
    eval { builder { 42 } };
    like($@, qr/must end with the app/, 'the block must return an app');
    eval { enable '+Test::Tag', name => 'x' };
    like($@, qr/only inside a builder/, 'enable outside builder croaks');
    eval { Test::Tag->new(name => 'x')->wrap('not code') };
    like($@, qr/must be a code reference/, 'wrap checks its app');
};

subtest 'helpers' => sub {
    is(PAGI::Middleware->html_escape(q{<a href="x">'&'</a>}), '&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;', 'html_escape');
    is_deeply(PAGI::Middleware->add_vary([ [ 'Vary', 'Accept' ] ], 'Origin'), [ [ 'Vary', 'Accept, Origin' ] ], 'add_vary merges');
    is_deeply(PAGI::Middleware->add_vary([ [ 'vary', 'origin' ] ], 'Origin'), [ [ 'vary', 'origin' ] ], 'and does not repeat');
    is(PAGI::Middleware->header([ [ 'a', 1 ], [ 'b', 2 ], [ 'b', 3 ] ], 'b'), 2, 'header: the first');
};

subtest 'a built stack on a real server' => sub {
    my $app = builder {
        enable 'SecurityHeaders';
        enable 'CORS', origins => ['http://allowed.example'];
        enable '+Test::Tag', name => 'tag';
        $inner;
    };
    my ($server, $port) = start_server(app => $app);
    my $r = http_get($port, '/', Origin => 'http://allowed.example')->get;
    is($r->{status}, 200, 'status 200');
    is($r->{body}, 'tag', 'the app ran inside the stack');
    is($r->{header}{'access-control-allow-origin'}, 'http://allowed.example', 'CORS header');
    is($r->{header}{'x-content-type-options'}, 'nosniff', 'security header');
    is($r->{header}{'x-tag'}, 'tag', 'the inner middleware header');
    stop_server($server);
};

done_testing;
