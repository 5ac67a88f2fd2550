package PAGI::Middleware;
use strict;
use warnings;

our $VERSION = '0.01';

use Carp ();
use Future;
use Future::AsyncAwait;
use Scalar::Util ();

=head1 NAME

PAGI::Middleware - base class and conventions for PAGI middleware

=head1 SYNOPSIS

    package PAGI::Middleware::Hello;
    use parent 'PAGI::Middleware';
    use Future::AsyncAwait;

    sub init {
        my ($self) = @_;
        $self->{greeting} //= 'hello';    # options are in $self
    }

    async sub call {
        my ($self, $scope, $receive, $send, $app) = @_;
        my $wrapped_send = async sub {
            my ($event) = @_;
            push @{ $event->{headers} }, [ 'x-greeting', $self->{greeting} ]
                if $event->{type} eq 'http.response.start';
            await $send->($event);
        };
        await $app->($self->scope_with($scope, 'hello.seen' => 1), $receive, $wrapped_send);
    }

    # elsewhere
    my $app = PAGI::Middleware::Hello->new(greeting => 'hi')->wrap($inner_app);

=head1 DESCRIPTION

A PAGI middleware takes an app and returns an app (PAGI-SPEC 1.7). Each
middleware under C<PAGI::Middleware::*> is an object built with C<new(%options)>
whose C<wrap($app)> returns a new app, an C<async sub ($scope, $receive, $send)>.
L<PAGI::Middleware::Builder> composes several of them.

The conventions every middleware here follows:

=over

=item * The caller's scope is never changed: a changed scope is a shallow
copy (L</scope_with>). Values reached through references stay shared.

=item * Only the scope types the middleware is meant for are touched
(L</scope_types>, C<http> by default); any other scope (websocket, sse,
lifespan, or a type from the future) goes to the inner app unchanged.

=item * Responses are rewritten by wrapping C<$send>, request bodies by
wrapping C<$receive>. A streamed response is never buffered unless the
middleware cannot work otherwise, and then only up to a stated bound.

=item * The inner app's Future is propagated: its failure reaches the caller
(only L<PAGI::Middleware::ErrorHandler> turns it into a response).

=item * A bad option croaks in C<new>, naming the option.

=back

=head1 METHODS

=head2 new

    my $mw = PAGI::Middleware::Something->new(%options);

Stores the options in the object and calls C<init>, which checks them.

=cut

sub new {
    my ($class, %options) = @_;
    my $self = bless {%options}, $class;
    $self->init;
    return $self;
}

=head2 init

Called by C<new>; subclasses check and default their options here and
croak (with L</option_error>) for a bad one. The base version does nothing.

=cut

sub init { }

=head2 wrap

    my $wrapped_app = $mw->wrap($app);

The wrapped app: scopes of the types in C<scope_types> go to
C<< $mw->call($scope, $receive, $send, $app) >>, others straight to C<$app>.

=cut

sub wrap {
    my ($self, $app) = @_;
    Carp::croak(ref($self) . '->wrap: the app must be a code reference')
        unless _is_code($app);
    my %handles = map { $_ => 1 } $self->scope_types;
    return sub {
        my ($scope) = @_;
        return $app->(@_) unless ref $scope eq 'HASH' && $handles{ $scope->{type} // '' };
        return $self->call(@_[0 .. 2], $app);
    };
}

=head2 call

    async sub call { my ($self, $scope, $receive, $send, $app) = @_; ... }

What the middleware does for one scope. Subclasses implement it; it returns
a Future (normally it is an C<async sub>).

=cut

sub call {
    my ($self) = @_;
    Carp::croak(ref($self) . ' does not implement call');
}

=head2 scope_types

The scope types the middleware handles: C<('http')> unless a subclass says
otherwise.

=cut

sub scope_types { ('http') }

=head1 HELPERS

Small functions and methods middleware and the apps in C<PAGI::App::*>
share. All are plain subs that can also be called as methods.

=head2 scope_with

    my $copy = $self->scope_with($scope, key => $value, ...);

A shallow copy of the scope with the given keys set.

=cut

sub scope_with {
    my ($self, $scope, %set) = @_;
    return { %$scope, %set };
}

=head2 header

    my $value = PAGI::Middleware->header($headers, 'content-type');

The value of the first header with that (lower-case) name in an array of
C<[name, value]> pairs, or undef. C<header_all> returns every value.

=cut

sub header {
    my ($self, $headers, $name) = @_;
    for my $pair (@{ $headers || [] }) {
        return $pair->[1] if lc $pair->[0] eq $name;
    }
    return undef;
}

sub header_all {
    my ($self, $headers, $name) = @_;
    return map { lc $_->[0] eq $name ? $_->[1] : () } @{ $headers || [] };
}

=head2 add_vary

    my $headers = PAGI::Middleware->add_vary($headers, 'Origin');

A copy of the header pairs with the name added to C<Vary> (merged into an
existing one, not duplicated; a C<Vary: *> is left alone).

=cut

sub add_vary {
    my ($self, $headers, $name) = @_;
    my @pairs = map { [@$_] } @{ $headers || [] };
    my ($vary) = grep { lc $_->[0] eq 'vary' } @pairs;
    if (!$vary) {
        push @pairs, [ vary => $name ];
    }
    else {
        my %have = map { lc($_) => 1 } split /\s*,\s*/, $vary->[1];
        $vary->[1] .= ", $name" unless $have{ lc $name } || $have{'*'};
    }
    return \@pairs;
}

=head2 send_response

    await PAGI::Middleware->send_response($send, 404, [ 'content-type' => 'text/plain' ], "Not found\n");

Sends a whole response: start with the headers (a flat list of names and
values, or an array of pairs) and one body event. A C<content-length> is
added when missing.

=cut

async sub send_response {
    my ($self, $send, $status, $headers, $body) = @_;
    $body //= '';
    my @pairs = _pairs($headers);
    push @pairs, [ 'content-length', length $body ] unless grep { lc $_->[0] eq 'content-length' } @pairs;
    await $send->({ type => 'http.response.start', status => $status, headers => \@pairs });
    await $send->({ type => 'http.response.body', body => $body, more => 0 });
}

sub _pairs {
    my ($headers) = @_;
    return () unless $headers;
    return map { [@$_] } @$headers if @$headers && ref $headers->[0] eq 'ARRAY';
    my @flat = @$headers;
    my @pairs;
    push @pairs, [ splice @flat, 0, 2 ] while @flat;
    return @pairs;
}

=head2 html_escape

    my $safe = PAGI::Middleware->html_escape($text);

The text with C<< & < > " ' >> replaced by character references.

=cut

my %HTML_ENTITY = ('&' => '&amp;', '<' => '&lt;', '>' => '&gt;', '"' => '&quot;', "'" => '&#39;');

sub html_escape {
    my ($self, $text) = @_;
    $text //= '';
    $text =~ s/([&<>"'])/$HTML_ENTITY{$1}/g;
    return $text;
}

=head2 option_error

    $self->option_error(origins => 'must be an array reference or a code reference');

Croaks with C<< Class: option 'origins' must be ... >>.

=cut

sub option_error {
    my ($self, $name, $problem) = @_;
    my $class = ref $self || $self;
    Carp::croak("$class: option '$name' $problem");
}

sub _is_code {
    my ($value) = @_;
    return 1 if ref $value eq 'CODE';
    return Scalar::Util::blessed($value) && overload::Method($value, '&{}') ? 1 : 0;
}

require overload;

=head1 SEE ALSO

L<PAGI::Middleware::Builder>, PAGI-SPEC section 1.7.

=cut

1;
