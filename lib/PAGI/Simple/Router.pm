package PAGI::Simple::Router;
use v5.36;
use Carp ();

our $VERSION = '0.01';

=head1 NAME

PAGI::Simple::Router - path patterns and method matching for PAGI::Simple

=head1 SYNOPSIS

    my $router = PAGI::Simple::Router->new;
    $router->add(GET => '/users/:id<\d+>', $handler, name => 'user');
    my $m = $router->match('GET', '/users/42');   # { route => ..., params => { id => 42 } }
    $router->url_for(user => { id => 7 });         # "/users/7"

=head1 PATH SYNTAX

=over

=item static text is compared exactly (no case folding, no trailing-slash normalisation)

=item C<:name> captures one segment (C<[^/]+>)

=item C<< :name<REGEX> >> captures one segment that must match REGEX entirely
(the constraint; REGEX cannot contain C<< > >>)

=item C<*name> captures the rest of the path, possibly empty; only as the
last segment

=back

Routes are tried in registration order; the first whose path and method
match wins. Method C<*> matches any method; a C<GET> route also answers
C<HEAD>.

=head1 METHODS

=head2 new, add($method, $path, $handler, %info), match($method, $path), allowed($path), url_for($name, \%params), routes

C<match> returns C<< { route => $route, params => \%captures } >>, or
C<< { allowed => [methods] } >> when the path matched only routes of other
methods, or undef. C<url_for> dies naming the route or the missing parameter.

=cut

sub new ($class) { bless { routes => [], by_name => {} }, $class }

sub routes ($self) { $self->{routes} }

sub compile ($class, $path) {
    Carp::croak("route path must start with '/': '$path'") unless $path =~ m{\A/};
    my (@names, $re, @parts);
    $re = '';
    my $rest = $path;
    while (length $rest) {
        if ($rest =~ s/\A:(\w+)(?:<([^>]+)>)?//) {
            push @names, $1;
            my $constraint = $2;
            $re .= defined $constraint ? "((?:$constraint))" : '([^/]+)';
            push @parts, [ param => $1 ];
        }
        elsif ($rest =~ s/\A\*(\w+)//) {
            Carp::croak("splat '*$1' must be the last segment of '$path'") if length $rest;
            push @names, $1;
            $re .= '(.*)';
            push @parts, [ splat => $1 ];
        }
        elsif ($rest =~ s/\A([^:*]+)//) {
            $re .= quotemeta $1;
            push @parts, [ text => $1 ];
        }
        else {
            Carp::croak("bad route path '$path' near '$rest'");
        }
    }
    # A path without parameters is compared as a string, not by a regex.
    my $static = @names ? undef : $path;
    return { regex => qr/\A$re\z/s, names => \@names, parts => \@parts, static => $static };
}

sub add ($self, $method, $path, $handler, %info) {
    my $compiled = __PACKAGE__->compile($path);
    my $route = { method => uc $method, path => $path, handler => $handler, %$compiled, %info };
    push @{ $self->{routes} }, $route;
    if (defined(my $name = $info{name})) {
        Carp::croak("route name '$name' is already used") if $self->{by_name}{$name};
        $self->{by_name}{$name} = $route;
    }
    return $route;
}

sub match ($self, $method, $path) {
    my %allowed;
    for my $route (@{ $self->{routes} }) {
        my $params;
        if (defined $route->{static}) {
            next unless $path eq $route->{static};
            $params = {};
        }
        else {
            my @values = $path =~ $route->{regex} or next;
            $params = {};
            @$params{ @{ $route->{names} } } = @values if @{ $route->{names} };
        }
        my $rm = $route->{method};
        return { route => $route, params => $params }
            if $rm eq '*' || $rm eq $method || ($method eq 'HEAD' && $rm eq 'GET');
        $allowed{$rm} = 1;
        $allowed{HEAD} = 1 if $rm eq 'GET';
    }
    return %allowed ? { allowed => [ sort keys %allowed ] } : undef;
}

sub url_for ($self, $name, $params = {}) {
    my $route = $self->{by_name}{$name} or Carp::croak("url_for: no route named '$name'");
    my %query = %$params;
    my $out = '';
    for my $part (@{ $route->{parts} }) {
        my ($kind, $value) = @$part;
        if ($kind eq 'text') { $out .= $value; next }
        my $v = delete $query{$value};
        Carp::croak("url_for('$name'): missing parameter '$value'") if !defined $v && $kind eq 'param';
        $v //= '';
        $out .= $kind eq 'splat' ? join('/', map { _escape($_) } split m{/}, $v, -1) : _escape($v);
    }
    # Parameters the path does not use become the query string.
    if (%query) {
        $out .= '?' . join('&', map { my $k = $_; map { _escape($k) . '=' . _escape($_) } ref $query{$k} eq 'ARRAY' ? @{ $query{$k} } : $query{$k} } sort keys %query);
    }
    return $out;
}

sub _escape ($s) {
    utf8::encode($s) if utf8::is_utf8($s);
    $s =~ s/([^A-Za-z0-9\-._~])/sprintf('%%%02X', ord $1)/ge;
    return $s;
}

1;
